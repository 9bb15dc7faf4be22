"""The HTTP API: the app factory, authentication, error mapping and the routers."""
