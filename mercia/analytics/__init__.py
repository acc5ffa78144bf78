"""Cohort analytics: characterisation, comparison, incidence, survival and reports.

Every public analysis returns an ``AnalysisResult`` (mercia.privacy.disclosure) that has already been
through the configured disclosure policy; see docs/analytics.md.
"""
