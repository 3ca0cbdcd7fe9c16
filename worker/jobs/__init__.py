"""Jobs: one follow-up scan of one patient through every stage, in a folder of its own.

A job folder is the contract between the API, the Celery tasks and ``rtinjury run``: the inputs
as received, what each stage hands to the next (plain files: images as MetaImage, facts as
JSON), the outputs, the job's request (``spec.json``) and its progress (``status.json``).
Nothing here needs Celery, Redis or a database.
"""
