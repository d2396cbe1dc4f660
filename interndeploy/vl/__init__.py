"""Images and videos for vision-language models (Intern-S1, Intern-S1-mini, InternVL).

    from interndeploy.vl import load_image
    pipe(("describe this image", load_image("https://.../cat.jpg")))

media.py fetches and decodes (with the server's URL policy), video.py samples video frames, preprocess.py tiles
images as InternVL does, prompt.py / frontend.py turn messages with media into prompt ids and MultimodalInputs.
"""

from .media import MediaError, MediaPolicy, load_image

__all__ = ["MediaError", "MediaPolicy", "load_image"]
