"""Puts tests/ on sys.path so that the shared writers in tests/ (fixture_files.py,
torch_reference.py) can be imported by every test folder.

pytest runs in 'prepend' import mode and tests/ has no __init__.py: importing this rootdir conftest
inserts its folder, tests/, at the front of sys.path before any test module below it is collected.
The file needs no code for that; it exists so that the folder is inserted.
"""
