"""Herald's HTTP face: the app factory, routers, schemas and auth."""
