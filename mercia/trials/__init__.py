"""Clinical trials: register, feasibility, pre-screening, recruitment and randomisation."""
