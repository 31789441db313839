"""Lookalike's Streamlit app: router, pages and UI helpers."""
