#version 310 es
// cohmem image compare (issue 16): an image BO's GPU copy, imported as the
// client's image (EGL_LINUX_DMA_BUF_EXT with the image's own width, height,
// fourcc, pitch, offset and modifier), is compared pixel by pixel with what
// the CPU expects from the BO's bytes. One invocation per row segment of
// up to 64 pixels (segment s of row y covers columns 64 s .. 64 s + 63, so a
// 64x64 tile is 64 segments); each writes
//   .x  how many of its pixels differ from the expectation,
//   .y  the first differing column (0xffffffff when none),
//   .z  the last differing column (0 when none),
//   .w  FNV-1a over its observed texels (r | g << 8 | b << 16 | a << 24),
// and cohmem-verify sums the counts per tile, takes the bounding box of the
// differing pixels, and compares each segment's checksum with the same FNV-1a
// over the BO's bytes computed on the CPU. GLSL ES 3.10 (GLES 3.1 compute);
// validated by naga and glslangValidator in tools/tests/shaders.rs.

layout(local_size_x = 64) in;

// The image as the GPU sees it, sampled (texelFetch: no filtering), .rgba
// in the order the fourcc defines (XRGB8888 and ARGB8888: .r is byte 2 of
// the pixel's little-endian word; XRGB8888's .a reads 1.0). A sampler, not
// an image unit: Mesa's llvmpipe cannot bind an imported display target
// as a compute image, and a sampler reads every format EGL imports.
layout(binding = 0) uniform highp sampler2D observed;

// What the CPU expects, as 8-bit unsigned integers in the same order.
layout(binding = 1) uniform highp usampler2D expected;

// One uvec4 per row segment, row-major (segment s of row y at
// y * segments + s).
layout(std430, binding = 1) buffer Segments {
    uvec4 results[];
};

// width, height: the image's; segments: row segments per row
// (ceil(width / 64)); swap_rb: 1 to swap .r and .b of the expectation (a
// driver that returns another channel order).
layout(std140, binding = 2) uniform Params {
    uint width;
    uint height;
    uint segments;
    uint swap_rb;
};

const uint FNV_OFFSET = 2166136261u;
const uint FNV_PRIME = 16777619u;
const uint SEGMENT = 64u;

void main() {
    uint id = gl_GlobalInvocationID.x;
    if (id >= segments * height) {
        return;
    }
    uint y = id / segments;
    uint x0 = (id % segments) * SEGMENT;
    uint x1 = min(x0 + SEGMENT, width);
    uint differing = 0u;
    uint first = 0xffffffffu;
    uint last = 0u;
    uint h = FNV_OFFSET;
    for (uint x = x0; x < x1; x++) {
        ivec2 at = ivec2(int(x), int(y));
        uvec4 got = uvec4(round(clamp(texelFetch(observed, at, 0), 0.0, 1.0) * 255.0));
        uvec4 want = texelFetch(expected, at, 0);
        if (swap_rb != 0u) {
            want = want.bgra;
        }
        if (got != want) {
            differing += 1u;
            first = min(first, x);
            last = max(last, x);
        }
        h = (h ^ (got.r | (got.g << 8u) | (got.b << 16u) | (got.a << 24u))) * FNV_PRIME;
    }
    results[id] = uvec4(differing, first, last, h);
}
