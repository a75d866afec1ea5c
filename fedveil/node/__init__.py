"""Node-side process machinery: the warm ClientApp worker that pairs with ``flower-supernode --isolation process``."""
