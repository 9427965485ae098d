"""The formats layer: one module per file kind, owning its paths and layout (no other module names an HDF5 path).

``nxmx`` (NXmx base of every shard: what DIALS reads), ``shards`` (simulated, overlay and matched shards),
``frames`` (an experiment's normalized frames file), ``background`` (water backgrounds), ``dials_export``
(what the DIALS-side export writes of stills_process' output), ``tables`` (DIALS tables per shard),
``predictions`` (peak-probability and classifier predictions), ``profiles`` (the energy / camera-length
model's radial profiles), ``mtz`` (structure factors), ``crystfel`` (CrystFEL .geom, written and read),
``hdf5_input`` (a user's HDF5 frames: where they are, their geometry).

The modules DIALS' own Python imports (``frames``, ``dials_export``) need only NumPy, h5py and the standard library.
"""
