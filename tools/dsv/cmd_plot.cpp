// dsv plot --metrics FILE.jsonl --out DIR: PNG figures of a training run (loss curves, expert load).
#include <fmt/format.h>

#include <filesystem>

#include "commands.h"
#include "core/error.h"
#include "io/png_writer.h"
#include "train/metrics.h"
#include "train/metrics_plots.h"

namespace dsv::cli {
namespace {

namespace fs = std::filesystem;

struct PlotArgs {
  std::string metrics, out_dir;
  int width = 1000, height = 600;
};

void write_png(const plot::Image& img, const fs::path& path) {
  write_png_rgb(path.string(), img.rgb().data(), img.width(), img.height());
  fmt::print(stderr, "dsv plot: wrote {} ({}x{})\n", path.string(), img.width(), img.height());
}

void run_plot(const PlotArgs& a) {
  DSV_CHECK(a.width >= 200 && a.height >= 150 && a.width <= 16384 && a.height <= 16384,
            "--width {} --height {}: expected 200..16384 x 150..16384 pixels", a.width, a.height);
  const train::MetricsLog log = train::read_metrics_jsonl(a.metrics);
  DSV_CHECK(!log.steps.empty(), "{}: no training steps in the file (expected lines like {{\"step\":1,\"loss\":...}})",
            a.metrics);
  std::error_code ec;
  fs::create_directories(a.out_dir, ec);
  DSV_CHECK(!ec && fs::is_directory(a.out_dir), "--out {}: cannot create the directory ({})", a.out_dir,
            ec ? ec.message() : "a file of that name is in the way");
  write_png(train::render_loss_plot(log, a.width, a.height), fs::path(a.out_dir) / "loss.png");
  if (train::has_expert_data(log))
    write_png(train::render_expert_load_plot(log, a.width, a.height), fs::path(a.out_dir) / "expert_load.png");
  else
    fmt::print(stderr, "dsv plot: {} has no \"expert_imbalance\" values (no MoE layers?); expert_load.png not written\n",
               a.metrics);
}

}  // namespace

void register_plot(CLI::App& app) {
  auto args = std::make_shared<PlotArgs>();
  CLI::App* cmd = app.add_subcommand(
      "plot", "Draw PNG figures from a training metrics file: DIR/loss.png (loss, MTP and validation loss, learning "
              "rate over steps) and DIR/expert_load.png (per-layer expert imbalance heatmap)");
  cmd->add_option("--metrics", args->metrics, "The .jsonl file `dsv train` wrote (output.metrics_jsonl)")
      ->required();
  cmd->add_option("--out", args->out_dir, "Directory for the PNG files (created if missing)")->required();
  cmd->add_option("--width", args->width, "Image width in pixels")->capture_default_str();
  cmd->add_option("--height", args->height, "Image height in pixels")->capture_default_str();
  cmd->callback([args] { run_plot(*args); });
}

}  // namespace dsv::cli
