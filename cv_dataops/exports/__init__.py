"""Exports: catalog tables and dataset versions as files other tools read.

:mod:`~cv_dataops.exports.files` (tables as CSV, Parquet or JSON), and a snapshot's formats:
:mod:`~cv_dataops.exports.imagefolder`, :mod:`~cv_dataops.exports.csv` (safe for spreadsheets),
:mod:`~cv_dataops.exports.coco` and :mod:`~cv_dataops.exports.label_studio` (tasks out).
"""
