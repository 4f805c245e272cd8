# whisper.cpp's decoder computes the vocabulary's logits for every token of a batch, though
# whisper_full reads only the last row of a prompt's. A primed transcription's prompt is ~100
# tokens, so its first decode multiplied ~100 rows by the 51,864-word output matrix to keep one.
# This file makes the decoder compute only the rows the batch asks for when that is the last
# one, and the copy of the logits read the row where it now is.
#
# CMake includes it after every project() call (CMAKE_PROJECT_INCLUDE, set in config.toml's
# [env]; whisper-rs-sys hands CMAKE_* variables to its cmake build). It edits the copy of
# whisper.cpp's sources that whisper-rs-sys makes in its build directory, never the crate's own
# files, and stops the build if the text it expects is not there (a new whisper.cpp).
# `ringline_whisper_last_logits()` is the mark Ringline links against: a whisper.cpp built
# without this file fails to link rather than run slower unnoticed.
if(NOT PROJECT_NAME STREQUAL "whisper.cpp")
    return()
endif()

set(_ringline_src "${PROJECT_SOURCE_DIR}/src/whisper.cpp")
file(READ "${_ringline_src}" _ringline_text)
string(FIND "${_ringline_text}" "ringline_whisper_last_logits" _ringline_done)
if(NOT _ringline_done EQUAL -1)
    return()
endif()

function(_ringline_replace old new)
    string(FIND "${_ringline_text}" "${old}" _at)
    if(_at EQUAL -1)
        message(FATAL_ERROR "whisper-last-logits.cmake: `${old}` is not in ${_ringline_src}; "
            "this whisper.cpp differs from the one the patch was written for (1.8.3)")
    endif()
    string(REPLACE "${old}" "${new}" _replaced "${_ringline_text}")
    set(_ringline_text "${_replaced}" PARENT_SCOPE)
endfunction()

# Whether a batch wants logits for its last token alone (a prompt, or one decoder's step).
_ringline_replace(
    "static struct ggml_cgraph * whisper_build_graph_decoder("
    "static bool ringline_only_last_logits(const whisper_batch & batch) {
    for (int i = 0; i + 1 < batch.n_tokens; ++i) {
        if (batch.logits[i] != 0) {
            return false;
        }
    }
    return true;
}

static struct ggml_cgraph * whisper_build_graph_decoder(")

# The graph: only the last row goes through the output matrix. The worst-case graph that sizes
# the allocator keeps every row.
_ringline_replace(
    "    //cur = ggml_view_2d(ctx0, cur, cur->ne[0], 1, cur->nb[1], (cur->ne[1] - 1)*cur->nb[1]);"
    "    if (!worst_case && n_tokens > 1 && ringline_only_last_logits(batch)) {
        cur = ggml_view_2d(ctx0, cur, cur->ne[0], 1, cur->nb[1], (cur->ne[1] - 1)*cur->nb[1]);
    }")

# The copy: with one row computed, token i's logits are that row.
_ringline_replace(
    "ggml_backend_tensor_get(logits, logits_out.data() + (n_vocab*i), sizeof(float)*(n_vocab*i), sizeof(float)*n_vocab);"
    "ggml_backend_tensor_get(logits, logits_out.data() + (n_vocab*i), sizeof(float)*(n_vocab*(logits->ne[1] == n_tokens ? i : 0)), sizeof(float)*n_vocab);")

string(APPEND _ringline_text "
// Ringline's mark that .cargo/whisper-last-logits.cmake patched this file.
extern \"C\" int ringline_whisper_last_logits(void) { return 1; }
")

file(WRITE "${_ringline_src}" "${_ringline_text}")
message(STATUS "whisper.cpp: the decoder computes logits only for the tokens a batch asks for")
