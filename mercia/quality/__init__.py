"""Data-quality reporting on a loaded CDM (``mercia dq report``)."""
