"""The engine every script trains with: the one loop (:mod:`.loop`) and what it is made of, the data order
(:mod:`.batches`), one optimizer step (:mod:`.step`), the objectives (:mod:`.objectives`), placement on
devices, DDP and FSDP2 (:mod:`.sharding`), evaluation and selection (:mod:`.evaluation`, MiniDisc's
:mod:`.schedule`), the files a stage keeps and resuming from them (:mod:`.checkpoint`), and the
importance pass (:mod:`.importance_pass`)."""
