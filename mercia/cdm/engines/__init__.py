"""One ``Store`` subclass per engine; each holds every difference of its engine (see ``mercia.cdm.store``)."""
