"""One module per page of the app; each is run by st.navigation from the router."""
