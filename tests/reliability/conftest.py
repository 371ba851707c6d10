from tests.reliability.clients import open_tmp  # noqa: F401  (a fixture)
