"""Reading one image file for the command-line tools (Grad-CAM, make_c): RGB pixels, or a one-line error that
names the file, since PIL raises ``OSError``, ``ValueError`` or ``SyntaxError`` with messages that do not."""
from PIL import Image

from .errors import first_line

__all__ = ['open_rgb']


def open_rgb(path: str) -> Image.Image:
    """The image at ``path`` decoded as RGB.

    Raises:
        ValueError: ``cannot read image '<path>': <reason>`` for a file that does not open or decode.
    """
    try:
        with Image.open(path) as img:
            return img.convert('RGB')
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"cannot read image '{path}': {first_line(e)}") from None
