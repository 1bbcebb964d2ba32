"""Run records, plots, markdown/HTML reports and model cards."""
