// Tensor maps for the Hopper bulk tensor copy (TMA): the host-side description of a global tile
// source that cp.async.bulk.tensor reads (tma.cuh has the device side).
#pragma once
#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace dsv::ops::cuda {

// A 2-D map over a row-major bf16 matrix [rows, cols] with rows `row_stride` values apart (a multiple
// of 8, the base 16-byte aligned): boxes of box_rows x 64 values (one 128-byte row each), written to
// shared memory in the 128-byte swizzle of wgmma_bf16.cuh; reads past the matrix fill zeros.
// cudaErrorInvalidValue where the driver refuses the shape.
cudaError_t make_bf16_tile_map(CUtensorMap* map, const void* base, int64_t rows, int64_t cols, int64_t row_stride,
                               int box_rows);

}  // namespace dsv::ops::cuda
