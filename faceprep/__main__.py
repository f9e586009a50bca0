"""``python -m faceprep`` runs the ``faceprep`` command line."""

from faceprep.cli import main

if __name__ == "__main__":
    main()
