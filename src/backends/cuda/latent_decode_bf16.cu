// Absorbed-MLA decode attention over a bf16 latent cache on tensor cores (mma.sync m16n8k16) with the
// key splits of each problem merged inside a thread-block cluster, through distributed shared memory.
//
// Problem: one query per head (q_lat [batch, H, Dqk], fp32) over one shared row per key (the latent
// cache, bf16, k = the whole row [Dqk], v = its first Dv values): out[b, h] = softmax(scale q.k) v.
// A block owns 16 heads (the 16 M rows of the MMA; absent heads are zero rows) and a range of keys,
// which it walks in 32-key tiles streamed into shared memory by cp.async, up to kMaxStages tiles in
// flight (all of a block's tiles at batch-1 sizes: each further tile would otherwise cost a round trip):
//   1. scores S[16 x 32] = Q K^T: warp w takes all 32 keys over its eighth of the Dqk columns (whole
//      32-column pairs), so each q fragment is read from shared memory once per warp and tile and the
//      key tile once per block (warps on 8 keys over half the columns each re-read all of q: shared
//      memory bandwidth, ~1.1 us of a 32-key tile on the H100); the 8 partials are summed in the softmax;
//   2. online softmax in fp32, warp w owning heads 2w and 2w + 1 (lane = key);
//   3. O[16 x Dv] = alpha O + P V: warp w owns value columns 64w .. 64w + 63 (Dv <= 512).
// Then the blocks of a cluster (the key splits of one problem and head group; up to 16) merge: each
// stores O, its running max and sum in shared memory, and after a cluster barrier block r reads, in one
// round of unconditional loads, every peer's statistics and its 1/cl slice of columns of every peer's
// O, and writes the merged, normalized output. When one cluster cannot cover the keys in a few tiles per block, several clusters each write
// an unnormalized partial (max, sum, O) and decode_combine merges them (attention.cu).
//
// Numerics: the CPU twin (cpu::attention) is fp32 arithmetic on the bf16 cache values, and so is this
// kernel to within a few fp32 roundings. The cache rows are bf16 already, so K and V enter the MMAs
// exactly; the fp32 operands q and P enter as pairs of bf16, hi = bf16(x) and lo = bf16(x - hi)
// (16 significant bits; the error of hi + lo is below 2^-16 of x), and each product is the sum of
// the two MMAs, accumulated in fp32. Rounding q and P to one bf16 each (as FlashMLA does) left errors
// of 4e-3 relative on peaked softmaxes, where a score's absolute error (2^-9 of |q| |k|) scales the
// weight; the second MMA costs little in a kernel bound by loading the cache. The softmax, its
// statistics and the merges are fp32.
// Grids depend only on S (kv_lengths are read on the device), so a captured decode graph replays them.
#include <cooperative_groups.h>
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "backends/cuda/cuda_ops.h"
#include "backends/cuda/launch.cuh"
#include "backends/cuda/mma_bf16.cuh"
#include "backends/cuda/warp_reduce.cuh"

namespace dsv::ops::cuda {
namespace {

namespace cg = cooperative_groups;
using bf16 = __nv_bfloat16;
using namespace ptx;

constexpr int kHeads = 16, kKeys = 32, kWarps = 8, kThreads = 32 * kWarps;
// Clusters of up to 16 blocks: 16 is beyond the portable 8, allowed on the H100 when enough of a GPC's
// SMs are free (checked at launch with cudaOccupancyMaxActiveClusters, else 8).
constexpr int kMaxCluster = 16, kPortableCluster = 8, kMaxDv = 64 * kWarps;
constexpr int kProbPitch = kKeys + 8;  // bf16 per row of P (8 rows of an ldmatrix in distinct banks)
constexpr int kTilesPerBlock = 4;      // more keys per block than this many tiles: more clusters
constexpr int kMaxStages = 4;          // key tiles in shared memory (a ring); at least 2
// Under the H100's 227 KB opt-in: four 32-key tiles of 576-value rows, q and the per-warp scores
// (~206 KB) fit, so long caches keep a ring of four.
constexpr size_t kMaxSmem = 220 * 1024;
constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

// Staged rows: Dqk padded to whole 32-column pairs of k-steps, plus 8 bf16 (16 bytes) so the 8 rows
// of an 8x8 ldmatrix fall in distinct bank groups.
__host__ __device__ constexpr int padded_dqk(int64_t Dqk) { return static_cast<int>((Dqk + 31) / 32 * 32); }
__host__ __device__ constexpr int row_pitch(int64_t Dqk) { return padded_dqk(Dqk) + 8; }
__host__ __device__ constexpr int out_pitch(int64_t Dv) { return static_cast<int>(Dv) + 8; }

size_t smem_bytes(int64_t Dqk, int stages) {
  const size_t pitch = static_cast<size_t>(row_pitch(Dqk));
  return (stages * kKeys + 2 * kHeads) * pitch * sizeof(bf16)  // key tiles (the ring), q hi and lo
         + kWarps * kHeads * kKeys * sizeof(float)            // per-warp partial scores
         + 2 * kHeads * kProbPitch * sizeof(bf16)             // P hi and lo
         + 3 * kHeads * sizeof(float);                         // alpha, max, sum
}


// Keys s0 .. s0 + 31 of rows `kb` (row stride ks) into `tile` [kKeys][pitch]: 16-byte cp.async
// chunks of the first Dqk columns, zeros for keys at or past s_end and for the pad columns. Warp w
// copies rows w, w + 8, ..., lane l the chunks l, l + 32, ...: no divisions. (One block of 8 warps per
// SM issues these setup loops at a few instructions per clock; ~50-instruction integer divisions per
// chunk made the q and key staging a third of the kernel, timed with clock64 on the H100.)
__device__ __forceinline__ void load_keys(bf16* tile, int pitch, const uint16_t* kb, int64_t ks, int64_t s0,
                                          int64_t s_end, int Dqk) {
  const int padded = padded_dqk(Dqk), warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int j = warp; j < kKeys; j += kWarps) {
    const bool row_ok = s0 + j < s_end;
    const uint16_t* src = row_ok ? kb + (s0 + j) * ks : kb;
    bf16* dst = tile + j * pitch;
    for (int c = 8 * lane; c < padded; c += 8 * 32) {
      const bool ok = row_ok && c < Dqk;
      cp_async16(dst + c, ok ? src + c : kb, ok);
    }
  }
  cp_async_commit();
}

// Waits until at most n (0 .. kMaxStages - 2) of this thread's newest cp.async groups are pending.
__device__ __forceinline__ void cp_async_wait_newest(int n) {
  if (n <= 0) cp_async_wait<0>();
  else if (n == 1) cp_async_wait<1>();
  else cp_async_wait<2>();
}
static_assert(kMaxStages - 2 <= 2, "cp_async_wait_newest covers up to two pending groups");

// Grid (clusters * cl, head groups, batch), cluster (cl, 1, 1). Block x of a problem covers keys
// [x * split_keys, +split_keys), `stages` tiles of them in flight. partial: [batch * H][clusters][Dv + 2]
// when clusters > 1, else unused.
// kCap: the largest cluster the merge is unrolled for (8, or 16 for the non-portable clusters; the
// 8-block build keeps the merge's registers as they were for the launches that never use 16).
template <int kCap>
__global__ void __launch_bounds__(kThreads)
    latent_mma_kernel(AttentionParams p, const uint16_t* K, int64_t ks, int64_t split_keys, int64_t clusters,
                      int stages, float* partial) {
  allow_dependents();
  if (!p.keys_settled) grid_dependency_wait();
  cg::cluster_group cluster = cg::this_cluster();
  const int cl = static_cast<int>(cluster.num_blocks()), rank = static_cast<int>(cluster.block_rank());
  extern __shared__ __align__(16) unsigned char smem[];
  const int Dqk = static_cast<int>(p.Dqk), Dv = static_cast<int>(p.Dv), pitch = row_pitch(p.Dqk);
  bf16* keys_smem = reinterpret_cast<bf16*>(smem);     // [stages][kKeys][pitch]
  bf16* q_hi = keys_smem + stages * kKeys * pitch;     // [kHeads][pitch]
  bf16* q_lo = q_hi + kHeads * pitch;                  // [kHeads][pitch]
  float* scores = reinterpret_cast<float*>(q_lo + kHeads * pitch);  // [kWarps][kHeads][kKeys]
  bf16* p_hi = reinterpret_cast<bf16*>(scores + kWarps * kHeads * kKeys);  // [kHeads][kProbPitch]
  bf16* p_lo = p_hi + kHeads * kProbPitch;             // [kHeads][kProbPitch]
  float* alpha = reinterpret_cast<float*>(p_lo + kHeads * kProbPitch);  // [kHeads]
  float* m_block = alpha + kHeads;                     // [kHeads] running max (log2 units), then final
  float* l_block = m_block + kHeads;                   // [kHeads]
  float* o_smem = reinterpret_cast<float*>(smem);      // [kHeads][out_pitch]: over the key tiles at the end

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, t = lane % 4;
  const int64_t split = blockIdx.x, h0 = static_cast<int64_t>(blockIdx.y) * kHeads, b = blockIdx.z;
  const int heads = static_cast<int>(p.H - h0 < kHeads ? p.H - h0 : kHeads);
  const int64_t keys = p.kv_lengths ? p.kv_lengths[b] : p.S, s_begin = split * split_keys;
  const int64_t s_end = keys < s_begin + split_keys ? keys : s_begin + split_keys;
  const uint16_t* kb = K + b * p.k_batch_stride;
  const float scale_log2 = p.scale * kLog2e;

  const int n_tiles = s_begin < s_end ? static_cast<int>((s_end - s_begin + kKeys - 1) / kKeys) : 0;
  // Settled keys (no op in flight writes them) start streaming before the wait for q's producer.
  const auto first_tiles = [&] {
    for (int i = 0; i < stages - 1; ++i) {
      if (i < n_tiles) load_keys(keys_smem + i * kKeys * pitch, pitch, kb, ks, s_begin + i * kKeys, s_end, Dqk);
      else cp_async_commit();
    }
  };
  if (p.keys_settled) {
    first_tiles();
    grid_dependency_wait();
  }
  {  // q rows of this head group as bf16 pairs: warp w takes heads w and w + 8, lane l their float4s
     // l, l + 32, ...; a lane's loads of a round are all issued before its stores
    const float* q = p.q + (b * p.H + h0) * p.Dqk;
    const int per_row = Dqk / 4;
    constexpr int kRows = kHeads / kWarps, kRound = 8;  // float4s per row and lane in flight at once
    for (int c0 = lane; c0 < per_row; c0 += 32 * kRound) {
      float4 v[kRows][kRound];
#pragma unroll
      for (int r = 0; r < kRows; ++r)
#pragma unroll
        for (int u = 0; u < kRound; ++u) {
          // clamped, unconditional loads (none waits behind a branch); the stores below skip the extras
          const int h = min(warp + kWarps * r, heads - 1), c = min(c0 + 32 * u, per_row - 1);
          v[r][u] = __ldg(reinterpret_cast<const float4*>(q + h * Dqk) + c);
        }
#pragma unroll
      for (int r = 0; r < kRows; ++r)
#pragma unroll
        for (int u = 0; u < kRound; ++u) {
          const int h = warp + kWarps * r, c = c0 + 32 * u;
          if (h >= heads || c >= per_row) continue;
          const int at = h * pitch + 4 * c;
          const float4 x = v[r][u];
          const __nv_bfloat162 hi0 = __floats2bfloat162_rn(x.x, x.y), hi1 = __floats2bfloat162_rn(x.z, x.w);
          *reinterpret_cast<__nv_bfloat162*>(q_hi + at) = hi0;
          *reinterpret_cast<__nv_bfloat162*>(q_hi + at + 2) = hi1;
          *reinterpret_cast<__nv_bfloat162*>(q_lo + at) =
              __floats2bfloat162_rn(x.x - __low2float(hi0), x.y - __high2float(hi0));
          *reinterpret_cast<__nv_bfloat162*>(q_lo + at + 2) =
              __floats2bfloat162_rn(x.z - __low2float(hi1), x.w - __high2float(hi1));
        }
    }
    // zeros in the columns the MMAs read past Dqk, and in the rows of absent heads
    const int dpad = padded_dqk(p.Dqk);
    const __nv_bfloat162 zero = __floats2bfloat162_rn(0.0f, 0.0f);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int h = warp + kWarps * r;
      for (int d = (h < heads ? Dqk : 0) + 2 * lane; d < dpad; d += 2 * 32) {
        *reinterpret_cast<__nv_bfloat162*>(q_hi + h * pitch + d) = zero;
        *reinterpret_cast<__nv_bfloat162*>(q_lo + h * pitch + d) = zero;
      }
    }
  }

  // The first stages - 1 tiles start streaming now (one cp.async group each, empty past the last tile).
  // Unsettled keys after q, not before: q's loads are L2 hits that queued behind the tiles' HBM loads
  // (globaltimer phases on bench-16b-l4: q staged 6.5 -> 2.3 us into the kernel, the first tile landed
  // ~0.9 us sooner, since the next kernels' weight preloads crowd the memory system at its start).
  // Settled keys went out before the wait above, while the kernels before this one finished.
  if (!p.keys_settled) first_tiles();
  // Running statistics of this warp's two softmax heads (every lane holds them) and the O columns.
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
  float acc[8][4] = {};
  const int pairs32 = padded_dqk(p.Dqk) / 32;
  const int pair_begin = warp * pairs32 / kWarps, pair_end = (warp + 1) * pairs32 / kWarps;
  const int col0 = 64 * warp;  // this warp's value columns
  const int a_lane = (lane % 16) * pitch + 8 * (lane / 16);       // A fragment offsets: q rows,
  const int p_lane = (lane % 16) * kProbPitch + 8 * (lane / 16);  // P rows

  for (int tile_index = 0; tile_index < n_tiles; ++tile_index) {
    const int64_t s0 = s_begin + static_cast<int64_t>(tile_index) * kKeys;
    const bf16* tile = keys_smem + (tile_index % stages) * kKeys * pitch;
    cp_async_wait_newest(stages - 2);  // this tile's group has landed (later ones may be in flight)
    __syncthreads();
    {  // the ring slot of the previous tile is free (every thread passed its last sync): refill it
      const int next = tile_index + stages - 1;
      if (next < n_tiles)
        load_keys(keys_smem + (next % stages) * kKeys * pitch, pitch, kb, ks, s_begin + static_cast<int64_t>(next) * kKeys,
                  s_end, Dqk);
      else
        cp_async_commit();
    }
    {  // 1. partial scores of all 32 keys over this warp's 32-column pairs: each q fragment is read once
       // per warp and tile (4 n-tiles share it), the key tile once per block; four chains per n-tile
      float c[4][4][4] = {};
      const bf16* b_lane = tile + (lane % 8) * pitch + 8 * (lane / 8);
      for (int pp = pair_begin; pp < pair_end; ++pp) {
        uint32_t h0[4], h1[4], l0[4], l1[4];
        ldsm_x4(h0, q_hi + a_lane + 32 * pp);
        ldsm_x4(h1, q_hi + a_lane + 32 * pp + 16);
        ldsm_x4(l0, q_lo + a_lane + 32 * pp);
        ldsm_x4(l1, q_lo + a_lane + 32 * pp + 16);
#pragma unroll
        for (int n = 0; n < 4; ++n) {
          uint32_t kf[4];
          ldsm_x4(kf, b_lane + 8 * n * pitch + 32 * pp);
          mma_bf16(c[n][0], h0, kf[0], kf[1]);
          mma_bf16(c[n][1], h1, kf[2], kf[3]);
          mma_bf16(c[n][2], l0, kf[0], kf[1]);
          mma_bf16(c[n][3], l1, kf[2], kf[3]);
        }
      }
      float* sc = scores + warp * kHeads * kKeys;
#pragma unroll
      for (int n = 0; n < 4; ++n) {
        float s4[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) s4[i] = (c[n][0][i] + c[n][1][i]) + (c[n][2][i] + c[n][3][i]);
        const int key = 8 * n + 2 * t;
        *reinterpret_cast<float2*>(sc + g * kKeys + key) = make_float2(s4[0], s4[1]);
        *reinterpret_cast<float2*>(sc + (g + 8) * kKeys + key) = make_float2(s4[2], s4[3]);
      }
    }
    __syncthreads();
    {  // 2. online softmax of heads 2 warp, 2 warp + 1 over key `lane` of the tile
      const bool valid = s0 + lane < s_end;
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int h = 2 * warp + i;
        float sum_w = 0.0f;  // the warps' partial scores, in warp order
#pragma unroll
        for (int w = 0; w < kWarps; ++w) sum_w += scores[(w * kHeads + h) * kKeys + lane];
        const float s = valid ? sum_w * scale_log2 : -INFINITY;
        const float m_new = fmaxf(m_run[i], warp_max(s));  // finite: the tile has a valid key
        const float pr = valid ? exp2f(s - m_new) : 0.0f;
        const bf16 hi = __float2bfloat16_rn(pr);
        p_hi[h * kProbPitch + lane] = hi;
        p_lo[h * kProbPitch + lane] = __float2bfloat16_rn(pr - __bfloat162float(hi));
        const float a = exp2f(m_run[i] - m_new);  // 0 on the first tile
        l_run[i] = l_run[i] * a + warp_sum(pr);
        m_run[i] = m_new;
        if (lane == 0) alpha[h] = a;
      }
    }
    __syncthreads();
    {  // 3. O = alpha O + P V over this warp's value columns
      const float a_lo = alpha[g], a_hi = alpha[g + 8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        acc[j][0] *= a_lo, acc[j][1] *= a_lo;
        acc[j][2] *= a_hi, acc[j][3] *= a_hi;
      }
      const bf16* v_lane = tile + (lane % 16) * pitch + 8 * (lane / 16) + col0;
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) {
        uint32_t ph[4], pl[4];
        ldsm_x4(ph, p_hi + p_lane + 16 * kk);
        ldsm_x4(pl, p_lo + p_lane + 16 * kk);
#pragma unroll
        for (int j = 0; j < 8; j += 2) {
          if (col0 + 8 * j < Dv) {  // Dv a multiple of 16: both n tiles of the pair are columns
            uint32_t vf[4];
            ldsm_x4_trans(vf, v_lane + 16 * kk * pitch + 8 * j);
            mma_bf16(acc[j], ph, vf[0], vf[1]);
            mma_bf16(acc[j + 1], ph, vf[2], vf[3]);
            mma_bf16(acc[j], pl, vf[0], vf[1]);
            mma_bf16(acc[j + 1], pl, vf[2], vf[3]);
          }
        }
      }
    }
    __syncthreads();  // the tile buffer and P are free for the next tile
  }
  cp_async_wait<0>();  // only empty groups can be pending; o_smem below reuses the ring

  // This block's O, max and sum into shared memory (blocks with no keys: -inf, 0 and zeros).
  const int op = out_pitch(p.Dv);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const int col = col0 + 8 * j + 2 * t;
    if (col0 + 8 * j < Dv) {
      *reinterpret_cast<float2*>(o_smem + g * op + col) = make_float2(acc[j][0], acc[j][1]);
      *reinterpret_cast<float2*>(o_smem + (g + 8) * op + col) = make_float2(acc[j][2], acc[j][3]);
    }
  }
  if (lane == 0) {
    m_block[2 * warp] = m_run[0], m_block[2 * warp + 1] = m_run[1];
    l_block[2 * warp] = l_run[0], l_block[2 * warp + 1] = l_run[1];
  }
  cluster.sync();  // every block's O and statistics are written and visible across the cluster

  const int64_t cluster_index = split / cl;
  // Column pairs of this block's slice: 16 threads per head (kThreads = 16 kHeads). Each thread loads
  // its head's statistics and its column pair from every peer in one round of distributed shared
  // memory loads, then weighs them. Dv is a multiple of 16 and cl a power of two, so the slice has an
  // even width.
  const int slice = Dv / cl, d0 = rank * slice, h = tid / 16;
  static_assert(kThreads == 16 * kHeads, "the merge gives each head 16 threads");
  if (h < heads) {
    float m[kCap], l[kCap];
#pragma unroll
    for (int r = 0; r < kCap; ++r) {  // unconditional loads (rank r % cl), so none waits behind a branch
      const float mr = *cluster.map_shared_rank(m_block + h, r & (cl - 1));
      const float lr = *cluster.map_shared_rank(l_block + h, r & (cl - 1));
      m[r] = r < cl ? mr : -INFINITY;
      l[r] = r < cl ? lr : 0.0f;
    }
    for (int c = 2 * (tid % 16); c < slice; c += 2 * 16) {
      const int d = d0 + c;
      float2 peer[kCap];
#pragma unroll
      for (int r = 0; r < kCap; ++r)
        peer[r] = *reinterpret_cast<const float2*>(cluster.map_shared_rank(o_smem + h * op + d, r & (cl - 1)));
      // M, the weights and L after the column loads are issued, not before the loop (which would
      // wait for the statistics before loading a column); one trip at the release shapes.
      float M = -INFINITY;
#pragma unroll
      for (int r = 0; r < kCap; ++r) M = fmaxf(M, m[r]);
      float L = 0.0f;
      float2 sum = make_float2(0.0f, 0.0f);
#pragma unroll
      for (int r = 0; r < kCap; ++r)
        if (r < cl) {
          const float w = m[r] == -INFINITY ? 0.0f : exp2f(m[r] - M);
          L += w * l[r];
          sum.x += w * peer[r].x;
          sum.y += w * peer[r].y;
        }
      const int64_t row = b * p.H + h0 + h;
      if (clusters == 1) {
        *reinterpret_cast<float2*>(p.out + row * p.Dv + d) = L > 0.0f ? make_float2(sum.x / L, sum.y / L) : make_float2(0.0f, 0.0f);
      } else {
        *reinterpret_cast<float2*>(partial + (row * clusters + cluster_index) * (p.Dv + 2) + 2 + d) = sum;
        if (rank == 0 && c == 0) {  // the merged statistics, natural-log units as decode_combine expects
          float* part = partial + (row * clusters + cluster_index) * (p.Dv + 2);
          part[0] = M * kLn2;
          part[1] = L;
        }
      }
    }
  }
  cluster.sync();  // no block leaves while a peer may still read its shared memory
}

// Whether batch * groups clusters of cl blocks (cl > 8, non-portable) can all be resident at once.
bool clusters_fit(const AttentionParams& p, int cl, int64_t groups, size_t smem) {
  if (cudaFuncSetAttribute(latent_mma_kernel<kMaxCluster>, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) !=
      cudaSuccess) {
    cudaGetLastError();  // not supported here: clear the error, stay portable
    return false;
  }
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(cl), static_cast<unsigned>(groups), static_cast<unsigned>(p.batch));
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = smem;
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeClusterDimension;
  attribute.val.clusterDim.x = static_cast<unsigned>(cl);
  attribute.val.clusterDim.y = 1;
  attribute.val.clusterDim.z = 1;
  config.attrs = &attribute;
  config.numAttrs = 1;
  int active = 0;
  if (cudaOccupancyMaxActiveClusters(&active, latent_mma_kernel<kMaxCluster>, &config) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return active >= groups * p.batch;
}

int multiprocessors() {  // of the device in use when first asked (an H100's 132 if the query fails)
  static const int count = [] {
    int device = 0;
    DeviceInfo info;
    return cudaGetDevice(&device) == cudaSuccess && query_device(device, &info) == cudaSuccess && info.sm_count > 0
               ? info.sm_count
               : 132;
  }();
  return count;
}

}  // namespace

bool latent_decode_bf16_applies(const AttentionParams& p, const uint16_t* K, const uint16_t* V, int64_t hkv,
                                int64_t ks, int64_t vs) {
  return hkv == 1 && p.T == 1 && K == V && ks == vs && !p.lse && p.Dv <= p.Dqk && p.Dv % 16 == 0 &&
         p.Dv <= kMaxDv && p.Dv > 0 && p.Dqk % 8 == 0 && ks % 8 == 0 && p.k_batch_stride % 8 == 0 &&
         reinterpret_cast<uintptr_t>(K) % 16 == 0 && reinterpret_cast<uintptr_t>(p.q) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(p.out) % 8 == 0 &&
         smem_bytes(p.Dqk, 2) <= kMaxSmem && p.batch <= 65535 && (p.H + kHeads - 1) / kHeads <= 65535 && p.S > 0;
}

cudaError_t latent_decode_bf16(const AttentionParams& p, const uint16_t* K, int64_t ks, cudaStream_t stream) {
  // Blocks per problem and head group: enough to fill every SM once over the whole call, in a cluster
  // of up to 16 (a power of two, so Dv splits evenly across it); more clusters only when each block
  // would otherwise walk more than kTilesPerBlock tiles (long caches at small batch).
  // Occupancy as with two stages (one block per SM on the releases' shapes either way); the ring may
  // grow up to max_stages tiles within kMaxSmem.
  int max_stages = kMaxStages;
  while (max_stages > 2 && smem_bytes(p.Dqk, max_stages) > kMaxSmem) --max_stages;
  cudaError_t e = cudaSuccess;
  for (auto kernel : {latent_mma_kernel<kPortableCluster>, latent_mma_kernel<kMaxCluster>})
    if (e == cudaSuccess)
      e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(smem_bytes(p.Dqk, max_stages)));
  if (e != cudaSuccess) return e;
  int per_sm = 0;
  e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, latent_mma_kernel<kPortableCluster>, kThreads,
                                                    smem_bytes(p.Dqk, 2));
  if (e != cudaSuccess) return e;
  const int64_t tiles = (p.S + kKeys - 1) / kKeys, groups = (p.H + kHeads - 1) / kHeads;
  int64_t target = (per_sm < 1 ? 1 : per_sm) * multiprocessors() / (p.batch * groups);
  target = target < 1 ? 1 : target;
  // The tiles a block walks set the time (~2.4 us per 32-key tile on the H100, loads and the tile's
  // own barriers and MMA chains together; measured 8 blocks of 3 tiles 16.5 us, 4 of 5 22 us, 2 of 10
  // 33 us), so spread the keys widely.
  // Dv / cl must stay even (the merge moves float2 columns): Dv % (2 * 2cl) before doubling cl.
  int cl = 1;
  while (2 * cl <= kMaxCluster && 2 * cl <= target && 2 * cl <= tiles && p.Dv % (4 * cl) == 0) cl *= 2;
  // 16-block clusters only for one problem and head group (batch-1 steps of up to 16 heads), where
  // they were measured faster (16.6 -> 14.5 us on bench-16b-l4); for 671b-l2's 8 head groups they were not.
  if (cl > kPortableCluster && (groups * p.batch > 1 || !clusters_fit(p, cl, groups, smem_bytes(p.Dqk, max_stages))))
    cl = kPortableCluster;
  int64_t clusters = 1;
  if (tiles > cl * kTilesPerBlock) {
    const int64_t want = (tiles + cl * kTilesPerBlock - 1) / (cl * kTilesPerBlock), room = target / cl;
    clusters = want < room ? want : room;
    clusters = clusters < 1 ? 1 : clusters;
  }
  const int64_t split_tiles = (tiles + clusters * cl - 1) / (clusters * cl);
  const int64_t split_keys = split_tiles * kKeys;
  // All of a block's tiles in flight at once where they fit (up to kMaxStages), else a ring.
  int stages = static_cast<int>(split_tiles + 1 < max_stages ? split_tiles + 1 : max_stages);
  stages = stages < 2 ? 2 : stages;
  const size_t smem = smem_bytes(p.Dqk, stages);
  const int64_t rows = p.batch * p.H;
  float* partial = nullptr;
  if (clusters > 1) {
    partial = static_cast<float*>(cached_allocate(static_cast<size_t>(rows * clusters * (p.Dv + 2)) * sizeof(float)));
    if (!partial) return cudaErrorMemoryAllocation;
  }
  {
    const dim3 grid(static_cast<unsigned>(clusters * cl), static_cast<unsigned>(groups), static_cast<unsigned>(p.batch));
    e = launch_dependent_cluster(cl > kPortableCluster ? latent_mma_kernel<kMaxCluster> : latent_mma_kernel<kPortableCluster>,
                                 grid, kThreads, smem, stream, static_cast<unsigned>(cl), p, K, ks, split_keys, clusters,
                                 stages, partial);
  }
  if (clusters > 1) {
    if (e == cudaSuccess) e = decode_combine(p, rows, clusters, partial, stream);
    cached_release(partial);
  }
  return e;
}

}  // namespace dsv::ops::cuda
