"""capctl: the operators' command line (click), one module per noun."""
