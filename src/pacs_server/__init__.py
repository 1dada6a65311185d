"""pacs_server: a DICOM archive with Storage, Query/Retrieve, Worklist and MPPS services."""

__version__ = "0.1.0"

# Our own implementation identity in File Meta and A-ASSOCIATE (PS3.7 D.3.3.2).
# 2.25 root: a UUID-derived UID, fixed for this product.
IMPLEMENTATION_CLASS_UID = "2.25.248761389457164402853213389126731594212"
IMPLEMENTATION_VERSION_NAME = "PACS_SERVER_010"
