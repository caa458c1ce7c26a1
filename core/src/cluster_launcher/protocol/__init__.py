"""The wire and the files: what controller, engines and clients share.

``session`` signs and verifies messages; ``serialize`` turns Python objects
into buffers; ``bulk`` moves large buffers through shared memory;
``records`` encodes task records for DB replies; ``connection`` reads and
writes connection files; ``tunnel`` carries connections to the controller
through SSH (paramiko); ``remote`` holds the functions the client asks
engines to run.  Nothing here knows about a controller, an engine or a client.
"""
