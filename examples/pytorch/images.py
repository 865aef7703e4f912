"""Images as o3train turns them into samples (cpp/image_decode.cpp), byte for byte.

A PNG is decoded by libpng's simplified API, called through ctypes: the very function o3train's
loader calls, with the same output format, so that gamma handling, colour to gray (libpng's own
luminance in linear light), palettes, 16-bit and alpha come out alike. A JPEG is decoded by
libjpeg through torchvision.io.decode_jpeg, which asks libjpeg for the same output colour space
(JCS_GRAYSCALE or JCS_RGB) with the same defaults (islow DCT, fancy upsampling) as o3train. Then
both are resized as o3train resizes: bilinear with half-pixel centres, every step in float32 in the
order the C++ computes it, rounded to bytes by adding 0.5 and truncating.

One difference is left: o3train refuses a JPEG that libjpeg only warns about (corrupt data it pads
with grey), where torchvision decodes it.
"""

import ctypes
import ctypes.util

import torch
from torchvision.io import ImageReadMode, decode_jpeg

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IMAGE_VERSION = 1
_PNG_FORMAT = {1: 0, 3: 2}  # channels -> PNG_FORMAT_GRAY, PNG_FORMAT_RGB (png.h)


class _PngImage(ctypes.Structure):
    """png.h's `png_image`, the simplified API's control structure (stable across libpng 1.6)."""

    _fields_ = [
        ("opaque", ctypes.c_void_p),
        ("version", ctypes.c_uint32),
        ("width", ctypes.c_uint32),
        ("height", ctypes.c_uint32),
        ("format", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("colormap_entries", ctypes.c_uint32),
        ("warning_or_error", ctypes.c_uint32),
        ("message", ctypes.c_char * 64),
    ]


_libpng = None


def _png():
    """libpng16, loaded once (the library o3train's addon and torchvision's image module link)."""
    global _libpng
    if _libpng is None:
        name = ctypes.util.find_library("png16") or "libpng16.so.16"
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            raise ValueError(f"PNG images need libpng 1.6 ({name} did not load): install libpng16-16") from None
        image_p = ctypes.POINTER(_PngImage)
        lib.png_image_begin_read_from_memory.argtypes = [image_p, ctypes.c_void_p, ctypes.c_size_t]
        lib.png_image_finish_read.argtypes = [image_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p]
        lib.png_image_free.argtypes = [image_p]
        _libpng = lib
    return _libpng


def _decode_png(data, name, channels):
    lib = _png()
    image = _PngImage(version=_PNG_IMAGE_VERSION)
    source = ctypes.create_string_buffer(bytes(data), len(data))
    if not lib.png_image_begin_read_from_memory(ctypes.byref(image), source, len(data)):
        raise ValueError(f"{name}: corrupt PNG: {image.message.decode(errors='replace')}")
    image.format = _PNG_FORMAT[channels]
    # With no background given, libpng composes an image with alpha onto what the buffer holds:
    # zeros (black) here, as in o3train, whose buffer is zero-filled.
    pixels = torch.zeros((image.height, image.width, channels), dtype=torch.uint8)
    if not lib.png_image_finish_read(ctypes.byref(image), None, ctypes.c_void_p(pixels.data_ptr()), 0, None):
        message = image.message.decode(errors="replace")
        lib.png_image_free(ctypes.byref(image))
        raise ValueError(f"{name}: corrupt PNG: {message}")
    return pixels


def _decode_jpeg(data, name, channels):
    try:
        chw = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB)
    except RuntimeError as err:
        raise ValueError(f"{name}: corrupt JPEG: {str(err).splitlines()[0]}") from None
    return chw.permute(1, 2, 0)


def decode_image(data, name, channels):
    """A JPEG or PNG (told by its signature, not its name) as uint8 H x W x channels (1 gray, 3 RGB)."""
    if channels not in (1, 3):
        raise ValueError("channels must be 1 or 3")
    if data[:8] == _PNG_SIGNATURE:
        return _decode_png(data, name, channels)
    if data[:3] == b"\xff\xd8\xff":
        return _decode_jpeg(data, name, channels)
    raise ValueError(f"{name}: {'empty file' if not data else 'neither a JPEG nor a PNG image'}")


def _axis(source, target):
    """Per output index along one axis: the two source indices and the second one's weight (float32)."""
    scale = torch.tensor(source, dtype=torch.float32) / torch.tensor(target, dtype=torch.float32)
    f = ((torch.arange(target, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_min(0.0)
    i0 = f.to(torch.int64).clamp_max(source - 1)
    i1 = (i0 + 1).clamp_max(source - 1)
    return i0, i1, f - i0.to(torch.float32)


def resize_bilinear(images, height, width):
    """uint8 ... x H x W x C to ... x height x width x C, exactly as o3train's resizeBilinear."""
    h, w = images.shape[-3], images.shape[-2]
    if (h, w) == (height, width):
        return images
    y0, y1, wy = _axis(h, height)
    x0, x1, wx = _axis(w, width)
    wx, wy = wx.view(-1, 1), wy.view(-1, 1, 1)
    src = images.to(torch.float32)
    rows0, rows1 = src.index_select(-3, y0), src.index_select(-3, y1)
    top = rows0.index_select(-2, x0) * (1 - wx) + rows0.index_select(-2, x1) * wx
    bottom = rows1.index_select(-2, x0) * (1 - wx) + rows1.index_select(-2, x1) * wx
    return (top * (1 - wy) + bottom * wy + 0.5).to(torch.uint8)


def image_sample(data, name, channels, size):
    """The sample o3train makes of an encoded image: uint8 channels x size x size."""
    return resize_bilinear(decode_image(data, name, channels), size, size).permute(2, 0, 1).contiguous()


def gray_samples(images, channels, size):
    """Gray uint8 N x H x W images (idx files) as the samples their PNGs would give: N x channels x size x size.

    libpng replicates a gray image into RGB unchanged, so the same pixels give the same tensor
    whether they come from an idx file or a gray PNG.
    """
    hwc = images.unsqueeze(-1).expand(*images.shape, channels)
    return resize_bilinear(hwc, size, size).permute(0, 3, 1, 2).contiguous()
