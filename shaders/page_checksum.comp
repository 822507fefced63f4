#version 310 es
// cohmem page checksum (issue 8): one invocation per page of a BO's GPU
// resource, which is imported as a 2D image with one page per row
// (width = page size / 4 texels of 4 bytes, height = pages). Each invocation
// folds its row's 32-bit little-endian words with FNV-1a; cohmem-verify
// computes the same sums from the BO's bytes on the CPU and compares them
// page by page. GLSL ES 3.10 (GLES 3.1 compute); validated by naga and
// glslangValidator in tools/tests/shaders.rs.

layout(local_size_x = 64) in;

// The resource, bound as an rgba8ui image: .r .g .b .a are the bytes of a
// 32-bit word in memory order (DRM_FORMAT_ARGB8888 imported as GL_RGBA8).
layout(binding = 0, rgba8ui) readonly uniform highp uimage2D page_rows;

// One checksum per page.
layout(std430, binding = 1) buffer PageSums {
    uint sums[];
};

// rows: pages to checksum; words: 32-bit words per page. (Compute shaders
// default to highp for integers; only the image needs its precision.)
layout(std140, binding = 2) uniform Params {
    uint rows;
    uint words;
};

const uint FNV_OFFSET = 2166136261u;
const uint FNV_PRIME = 16777619u;

void main() {
    uint row = gl_GlobalInvocationID.x;
    if (row >= rows) {
        return;
    }
    uint h = FNV_OFFSET;
    for (uint x = 0u; x < words; x++) {
        uvec4 t = imageLoad(page_rows, ivec2(int(x), int(row)));
        uint w = t.r | (t.g << 8u) | (t.b << 16u) | (t.a << 24u);
        h = (h ^ w) * FNV_PRIME;
    }
    sums[row] = h;
}
