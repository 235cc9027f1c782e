"""FAISS indexes and LanceDB tables: build, persist, search. The lowest layer: imports nothing
from the rest of mindsearch."""
