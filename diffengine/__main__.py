"""``python -m diffengine`` (also what ``torchrun -m diffengine`` runs)."""

from diffengine.cli import main

if __name__ == "__main__":
    main()
