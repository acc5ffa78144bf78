"""Clinical trials: registration, randomisation, eCRFs."""
