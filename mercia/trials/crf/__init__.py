"""Electronic case report forms: REDCap dictionaries, branching logic, data entry with a GCP audit trail, ODM."""
