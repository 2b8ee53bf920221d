"""Stage 2: open the input wherever it lives and yield rows that keep their source index, and turn
an image cell into bytes. The only input I/O of the package.
"""
