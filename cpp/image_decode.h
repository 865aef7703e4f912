// JPEG and PNG decoding and resizing for the ImageFolder loader, without torch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace o3 {

struct Image {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;  // interleaved RGB (HWC), 8 bits per channel
};

// Decodes a JPEG or PNG file (detected by its signature, not its name) to RGB; grayscale and
// palette images are expanded, alpha is dropped. A corrupt or truncated file throws a fileError
// naming `path`.
Image decodeImageFile(const std::string& path);

// Bilinear resize with half-pixel centres (the convention of PIL and torch's align_corners=False).
Image resizeBilinear(const Image& src, int width, int height);

}  // namespace o3
