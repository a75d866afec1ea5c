"""Tests of the Streamlit dashboard."""
