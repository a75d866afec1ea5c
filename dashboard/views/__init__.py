"""Page scripts of the dashboard, run by ``st.navigation`` (each renders its page when executed)."""
