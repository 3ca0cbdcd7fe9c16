"""The DICOM node: a C-ECHO/C-STORE SCP that PACS and planning systems push studies to.

``server.NodeServer`` speaks DICOM (pynetdicom); ``inbox.Inbox`` stores what arrives and records
it in the job database; ``contexts`` lists what the node accepts.
"""
