"""The smallest rlm_python3 module: answers every Accounting-Request with ok (bench/ ceiling)."""

OK = 2  # radiusd.RLM_MODULE_OK


def accounting(_request):
    return OK
