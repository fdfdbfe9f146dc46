// dsv: one program, one subcommand per job. Every subcommand has --help.
#include <cstdio>
#include <exception>

#include "commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"dsv: DeepSeek-V2/V3 engine: inspect and run Hugging Face checkpoints on CPU or CUDA, train, tokenize, benchmark"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "dsv 0.1.0");
  dsv::cli::register_info(app);
  dsv::cli::register_generate(app);
  dsv::cli::register_logits(app);
  dsv::cli::register_bench(app);
  dsv::cli::register_train(app);
  dsv::cli::register_plot(app);
  dsv::cli::register_export(app);
  dsv::cli::register_preprocess(app);
  dsv::cli::register_tokenizer_commands(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const dsv::Error& e) {
    std::fprintf(stderr, "dsv: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsv: internal error: %s\n", e.what());
    return 2;
  }
  return 0;
}
