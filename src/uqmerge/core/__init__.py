"""The toolbox every layer shares: errors, devices and dtypes, atomic writes, stable seeds, summary statistics,
prompt primitives and JSONL rows."""
