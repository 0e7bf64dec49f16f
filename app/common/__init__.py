"""Small helpers every part of the core uses: formatting, JSON files, resources, statistics."""
