// JPEG and PNG decoding and resizing for the ImageFolder loader, without torch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace o3 {

struct Image {
  int width = 0;
  int height = 0;
  int channels = 3;             // 3: RGB, 1: gray
  std::vector<uint8_t> pixels;  // interleaved (HWC), 8 bits per channel
};

// Decodes a JPEG or PNG (detected by its signature, not its name) to `channels` channels: 3 gives
// RGB (grayscale and palette images expanded), 1 gives gray (a grayscale image's own values; colour
// converted to luminance by libpng or libjpeg). A PNG with alpha is composed onto black. A corrupt or
// truncated image throws a fileError naming `name` (a file, or a shard member).
Image decodeImage(const std::vector<uint8_t>& bytes, const std::string& name, int channels);

// The whole file, or a fileError naming it.
std::vector<uint8_t> readWholeFile(const std::string& path);

// Bilinear resize with half-pixel centres (the convention of PIL and torch's align_corners=False).
Image resizeBilinear(const Image& src, int width, int height);

// Decodes, resizes to size x size and writes the image as CHW uint8 to `out`: the one path from an
// encoded image to a sample, whatever carries the image (a file of an ImageFolder, a shard member).
void decodeSample(const std::vector<uint8_t>& bytes, const std::string& name, int channels, int size, uint8_t* out);

}  // namespace o3
