"""The Ray Serve detection service (installed as ``zoomdet.serving``); arrives with the service work."""
