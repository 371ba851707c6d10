"""`make bench`: pgblobs measured against the large-object ceiling, plain files and nginx."""
