"""The content-addressed engine store, the name links that point into it, and their upkeep.

Layout (root = `constants.store_dir()`):

    store/
        <hash>-trtllm-engine-<name>-<version>/     a published engine (never modified after publishing)
            config.json, rank*.engine | hf_model/ | checkpoint/ + llm_api_options.yaml (PyTorch),
            tokenizer files, chat_template.jinja
            build.log                               the builder's output
            trtforge.json                           manifest: inputs, files (size + sha256), timings
        tmp/<hash>.<uuid8>.incomplete/              a build in progress (or the wreck of one)
        .locks/<hash>.lock                          one lock per build hash
        .gcroots/<sha16> -> <link dir>              every link directory a link was ever written into
        .builders/<hash>.json                       the running builder's session (pid + start time)
    <link dir>/<name> -> store/<entry>              name links (`constants.engine_link_dirs()`)

Invariants: an entry appears only by a rename of a checked, complete directory; links are replaced by
`os.replace` of a fresh symlink; locks prevent duplicate builds, correctness never depends on them.

Modules: `entries` (`EngineStore`: the directory, publishing, scanning, verifying), `gc` (plan, then execute),
`links` (name links: `link_engine`, `resolve_engine`, `verify_engine`). The manifest format is
`trtforge.manifest`. Import from the module that defines a name; this package re-exports nothing.
"""
