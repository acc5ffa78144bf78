"""Patient-reported outcome measures: EQ-5D-5L/3L scored with published value sets, Oxford Hip/Knee Scores."""
