{
  "targets": [
    {
      "target_name": "muser",
      "sources": ["native/muser.c"],
      "cflags": ["-Wall", "-Wextra"],
      "cflags_c": ["-std=c11"],
      "configurations": {
        "Release": {
          "cflags!": ["-O3"],
          "cflags": ["-O2"]
        }
      }
    }
  ]
}
