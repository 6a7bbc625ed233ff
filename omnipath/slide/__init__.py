"""The slide layer: open any OpenSlide format or plain image (format from content), read
regions and thumbnails safely from many threads, and fail with typed, readable errors.

    from omnipath.slide import open_slide, Slide, SlideInfo, SlideLimits, content_hash
    from omnipath.slide.tissue import tissue_fraction
"""

from omnipath.slide.hashing import content_hash
from omnipath.slide.limits import SlideLimits
from omnipath.slide.slide import Slide, SlideInfo, open_slide
from omnipath.slide.tissue import tissue_fraction

__all__ = ["Slide", "SlideInfo", "SlideLimits", "content_hash", "open_slide", "tissue_fraction"]
