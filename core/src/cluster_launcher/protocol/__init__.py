"""The wire and the files: what controller, engines and clients share.

``session`` signs and verifies messages; ``serialize`` turns Python objects
into buffers; ``bulk`` moves large buffers through shared memory;
``records`` encodes task records for DB replies; ``connection`` reads and
writes connection files; ``ssh`` logs in over SSH (paramiko) as OpenSSH would,
runs remote commands and opens SFTP; ``tunnel`` carries connections to the
controller through such a login; ``remote`` holds the functions the client asks
engines to run.  Nothing here knows about a controller, an engine or a client.
"""
