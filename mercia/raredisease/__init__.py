"""raredisease"""
