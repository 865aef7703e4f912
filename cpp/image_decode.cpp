#include "image_decode.h"

// jpeglib.h needs size_t and FILE declared first.
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <memory>

#include <jpeglib.h>
#include <png.h>

#include "error.h"

namespace o3 {
namespace {

struct JpegErrorManager {
  jpeg_error_mgr base;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

[[noreturn]] void jpegFail(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  longjmp(err->jump, 1);
}

// libjpeg only warns about truncated or corrupt entropy data and then pads the image with grey;
// a training set must not silently contain such images, so warnings are errors here.
void jpegMessage(j_common_ptr cinfo, int level) {
  if (level < 0) jpegFail(cinfo);
}

// Kept free of C++ objects with destructors between setjmp and any longjmp back into it.
Image decodeJpeg(const std::string& path, const std::vector<uint8_t>& bytes, int channels) {
  Image img;
  img.channels = channels;
  jpeg_decompress_struct cinfo;
  JpegErrorManager err;
  cinfo.err = jpeg_std_error(&err.base);
  err.base.error_exit = jpegFail;
  err.base.emit_message = jpegMessage;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    throw fileError(path, std::string("corrupt JPEG: ") + err.message);
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, bytes.data(), static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(&cinfo, TRUE);
  cinfo.out_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_start_decompress(&cinfo);
  img.width = static_cast<int>(cinfo.output_width);
  img.height = static_cast<int>(cinfo.output_height);
  img.pixels.resize(size_t(img.width) * img.height * size_t(channels));
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = img.pixels.data() + size_t(cinfo.output_scanline) * img.width * size_t(channels);
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return img;
}

// libpng's simplified API reports errors through its return value, no setjmp needed.
Image decodePng(const std::string& path, const std::vector<uint8_t>& bytes, int channels) {
  png_image png;
  std::memset(&png, 0, sizeof png);
  png.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&png, bytes.data(), bytes.size()))
    throw fileError(path, std::string("corrupt PNG: ") + png.message);
  png.format = channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
  Image img;
  img.channels = channels;
  img.width = static_cast<int>(png.width);
  img.height = static_cast<int>(png.height);
  img.pixels.resize(PNG_IMAGE_SIZE(png));
  // No background: libpng composes an image with alpha onto the buffer as it is, zero-filled (black).
  if (!png_image_finish_read(&png, nullptr, img.pixels.data(), 0, nullptr)) {
    const std::string message = png.message;
    png_image_free(&png);
    throw fileError(path, "corrupt PNG: " + message);
  }
  return img;
}

}  // namespace

// stdio rather than ifstream: libstdc++'s filebuf throws its own exception on a read error
// (a FUSE mount that died, say), whose message would not name the file.
std::vector<uint8_t> readWholeFile(const std::string& path) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) throw openError(path);
  std::vector<uint8_t> bytes;
  uint8_t chunk[1 << 16];
  size_t got;
  while ((got = std::fread(chunk, 1, sizeof chunk, f.get())) > 0) bytes.insert(bytes.end(), chunk, chunk + got);
  if (std::ferror(f.get())) throw fileError(path, std::string("read error: ") + std::strerror(errno));
  return bytes;
}

Image decodeImage(const std::vector<uint8_t>& bytes, const std::string& name, int channels) {
  if (channels != 1 && channels != 3) throw Error("channels must be 1 or 3");
  static const uint8_t kPng[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (bytes.size() >= 8 && std::memcmp(bytes.data(), kPng, 8) == 0) return decodePng(name, bytes, channels);
  if (bytes.size() >= 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF) return decodeJpeg(name, bytes, channels);
  throw fileError(name, bytes.empty() ? "empty file" : "neither a JPEG nor a PNG image");
}

void decodeSample(const std::vector<uint8_t>& bytes, const std::string& name, int channels, int size, uint8_t* out) {
  const Image img = resizeBilinear(decodeImage(bytes, name, channels), size, size);
  const size_t plane = size_t(size) * size_t(size), n = size_t(channels);
  for (size_t p = 0; p < plane; ++p)
    for (size_t c = 0; c < n; ++c) out[c * plane + p] = img.pixels[p * n + c];
}

Image resizeBilinear(const Image& src, int width, int height) {
  if (src.width == width && src.height == height) return src;
  Image dst;
  dst.width = width;
  dst.height = height;
  dst.channels = src.channels;
  const int n = src.channels;
  dst.pixels.resize(size_t(width) * height * size_t(n));
  const float sx = float(src.width) / width, sy = float(src.height) / height;
  for (int y = 0; y < height; ++y) {
    const float fy = std::max(0.0f, (y + 0.5f) * sy - 0.5f);
    const int y0 = std::min(int(fy), src.height - 1), y1 = std::min(y0 + 1, src.height - 1);
    const float wy = fy - y0;
    for (int x = 0; x < width; ++x) {
      const float fx = std::max(0.0f, (x + 0.5f) * sx - 0.5f);
      const int x0 = std::min(int(fx), src.width - 1), x1 = std::min(x0 + 1, src.width - 1);
      const float wx = fx - x0;
      for (int c = 0; c < n; ++c) {
        auto at = [&](int yy, int xx) { return float(src.pixels[(size_t(yy) * src.width + xx) * n + c]); };
        const float top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx;
        const float bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx;
        dst.pixels[(size_t(y) * width + x) * n + c] = uint8_t(top * (1 - wy) + bottom * wy + 0.5f);
      }
    }
  }
  return dst;
}

}  // namespace o3
