"""Reading run folders back: compare, the verdicts, plots and the HTML report."""
