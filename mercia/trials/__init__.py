"""Clinical trials: register, feasibility, pre-screening, recruitment, randomisation, eCRFs."""
