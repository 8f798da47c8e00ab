"""lmforge preprocess service: cleans, de-duplicates and masks records; cuts dataset versions."""
